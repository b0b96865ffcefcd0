"""`diff-serve-demo`: serve the browser demo page for an export or a checkpoint on localhost.

    diff-serve-demo web/model                      # an export made by diff-export-onnx
    diff-serve-demo outputs/browser_demo --port 8080 # a checkpoint: exported first into outputs/browser_demo/onnx

The page (`web/`) is static: this server only maps `/` to `web/` and `/model/` to the export directory, so any
static file host serving the same two folders works the same way. A checkpoint is exported with diff-export-onnx's
defaults (the page's sampler settings can still be changed on the page) unless its export is newer than its files.
"""

from __future__ import annotations

import argparse
import functools
import http.server
from pathlib import Path
from urllib.parse import unquote, urlsplit

from diff_trainer.cli import export_onnx

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
RUNTIME_DIR = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"
MODEL_ROUTE = "/model/"
CHECKPOINT_EXPORT_DIR = "onnx"
CONTENT_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
}


class DemoHandler(http.server.SimpleHTTPRequestHandler):
    """Static files from `web/`, and the export directory under /model/."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **CONTENT_TYPES}

    def __init__(self, *args, export_dir: Path, **kwargs):
        self.export_dir = export_dir
        super().__init__(*args, directory=str(WEB_DIR), **kwargs)

    def translate_path(self, path: str) -> str:
        route = unquote(urlsplit(path).path)
        if route.startswith(MODEL_ROUTE):
            name = route[len(MODEL_ROUTE) :]
            if name in (export_onnx.MODEL_FILE, export_onnx.CONFIG_FILE):
                return str(self.export_dir / name)
            return str(self.export_dir / "not-served")  # only the two export files are served from there
        return super().translate_path(path)

    def send_head(self):
        if "\0" in unquote(urlsplit(self.path).path):  # no file name holds one (os calls would raise)
            self.send_error(400, "a NUL byte in the path")
            return None
        return super().send_head()

    def log_message(self, format, *args):  # one quiet line per failed request only
        if len(args) > 1 and str(args[1]).startswith(("4", "5")):
            super().log_message(format, *args)


def make_server(export_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A threaded HTTP server for the page and `export_dir` (port 0 picks a free port)."""
    handler = functools.partial(DemoHandler, export_dir=Path(export_dir))
    return http.server.ThreadingHTTPServer((host, port), handler)


def is_export(path: Path) -> bool:
    return (path / export_onnx.CONFIG_FILE).is_file() and (path / export_onnx.MODEL_FILE).is_file()


def export_is_current(checkpoint: Path, export_dir: Path) -> bool:
    """True when the checkpoint's export exists and is newer than every file of the checkpoint."""
    if not is_export(export_dir):
        return False
    exported = (export_dir / export_onnx.CONFIG_FILE).stat().st_mtime
    return all(f.stat().st_mtime <= exported for f in checkpoint.iterdir() if f.is_file())


def export_dir_for(parser, path: Path) -> Path:
    """The directory to serve: `path` itself when it is an export, else the checkpoint's (fresh) export."""
    if is_export(path):
        return path
    if not (path / "config.json").is_file():
        parser.error(f"{path} is neither an export (model.json + model.onnx) nor a checkpoint (config.json).")
    export_dir = path / CHECKPOINT_EXPORT_DIR
    if not export_is_current(path, export_dir):
        print(f"exporting {path} to {export_dir}")
        export_parser = export_onnx.build_parser()
        export_args = export_parser.parse_args(["--model", str(path), "--output", str(export_dir), "--overwrite"])
        export_onnx.export(export_args, export_parser)
    return export_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-serve-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="an export directory (diff-export-onnx) or a diffusion checkpoint")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the whole network)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (RUNTIME_DIR / "ort.wasm.min.mjs").is_file():
        parser.error(f"onnxruntime-web is not installed in {WEB_DIR}: run `npm ci` there first.")
    export_dir = export_dir_for(parser, Path(args.path))
    server = make_server(export_dir, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving {export_dir} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
