"""A WSGI app served by gunicorn, installed by the platform's build from requirements.txt."""
import os


def application(environ, start_response):
    body = (
        f"hello from gunicorn: {os.environ.get('PIER_APP', '?')} "
        f"{os.environ.get('PIER_RELEASE', '?')} {os.environ.get('PIER_INSTANCE', '?')}\n"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
