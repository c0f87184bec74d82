"""Model experiments: which model version scores a bid (a sticky split), and shadow scoring."""
