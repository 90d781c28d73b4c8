"""The service's API pages, /docs (Swagger UI) and /redoc (ReDoc), with every asset served by the service itself.

FastAPI's own pages load their scripts and styles from a CDN (and ReDoc its fonts from Google), so without internet
they stay blank. These are the same pages on the Swagger UI 5 and ReDoc files that the fastapi-offline package
installs. Like /openapi.json, which they render, they are public: the schema holds no data, and the POST endpoints
still ask for the API key when one is set (the page's Authorize button takes it).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..errors import RiclError

ASSETS_URL = "/docs-assets"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
# The browser may fetch nothing from another host for these pages: ReDoc's sidebar asks a CDN for a logo whatever
# its options say, which fails offline and online tells that host who reads the docs. The inline scripts and styles
# are the pages' own; ReDoc runs its search in a blob: worker.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:")
_INSTALL = "pip install 'fastapi-offline>=1.7'"


def assets_dir() -> Path:
    """fastapi-offline's folder of Swagger UI and ReDoc files; a missing package or file is an error naming it."""
    try:
        folder = Path(str(files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        raise RiclError(f"the API docs pages need the fastapi-offline package, which is not installed; {_INSTALL}")
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:
        raise RiclError(f"{folder}: no {', '.join(missing)}; expected the Swagger UI and ReDoc files of "
                        f"fastapi-offline>=1.7 ({_INSTALL})")
    return folder


def _root(request: Request) -> str:
    """The path the app is mounted under (uvicorn --root-path, behind a proxy), as FastAPI's own pages use it."""
    return request.scope.get("root_path", "").rstrip("/")


def _local_only(page: HTMLResponse) -> HTMLResponse:
    """`page` with the CSP header that keeps the browser from loading anything for it from another host."""
    page.headers["Content-Security-Policy"] = CSP
    return page


def add_docs(app: FastAPI) -> None:
    """GET /docs and /redoc on `app`, which must be built with docs_url=None and redoc_url=None, and their assets."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError(f"the app already serves CDN-based docs pages at {app.docs_url} and {app.redoc_url}; "
                         "expected FastAPI(docs_url=None, redoc_url=None)")
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        assets = _root(request) + ASSETS_URL
        return _local_only(get_swagger_ui_html(
            openapi_url=_root(request) + app.openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js", swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png", swagger_ui_parameters=app.swagger_ui_parameters))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        assets = _root(request) + ASSETS_URL
        return _local_only(get_redoc_html(
            openapi_url=_root(request) + app.openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js", redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False))  # the fonts come from Google's servers; ReDoc falls back to the system's
