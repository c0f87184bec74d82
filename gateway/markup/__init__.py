"""What an exchange serves for a catalog bid: banner HTML, VAST for video and audio, Native 1.2 JSON.

One module per format; `render` completes a winning bid with its markup and signed notice URLs.
"""
