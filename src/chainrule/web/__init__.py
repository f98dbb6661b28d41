"""The web app: draw a digit, check a message, watch the network think (`chainrule serve`).

The server is `app.py` (FastAPI on uvicorn); the page it serves is in `static/` (plain HTML, CSS
and JavaScript, no build step).
"""
