"""Signed notice URLs (nurl, burl, lurl) and the checks a notice passes before it may move money.

`keyring` holds the HMAC keys (an active one signs; a previous one still verifies during rotation),
`signing` writes the URLs a bid carries and signs their fields, `checks` takes a notice's query string
apart in the documented order (parse, unsubstituted macros, signature, price). docs/notices.md.
"""
