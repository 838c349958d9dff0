"""A FastAPI (Starlette) app behind ``ClerkTinybirdMiddleware``; see ``app.py``."""
