"""diff-serve-demo: what the server serves (and refuses), and when a checkpoint is exported."""

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from diff_trainer.cli import serve_demo as cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def export_dir(tmp_path):
    directory = tmp_path / "export"
    directory.mkdir()
    (directory / "model.json").write_text(json.dumps({"format": 1}))
    (directory / "model.onnx").write_bytes(b"onnx bytes")
    (directory / "secret.txt").write_text("not for the web")
    return directory


@pytest.fixture
def base_url(export_dir):
    server = cli.make_server(export_dir, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read()


def test_the_page_and_the_export_files_are_served_with_their_types(base_url):
    content_type, body = get(base_url)
    assert content_type.startswith("text/html") and b'src="js/app.js"' in body
    assert get(base_url + "js/sampler.js")[0] == "text/javascript"
    assert get(base_url + "model/model.json") == ("application/json", b'{"format": 1}')
    assert get(base_url + "model/model.onnx") == ("application/octet-stream", b"onnx bytes")


@pytest.mark.skipif(not (cli.RUNTIME_DIR / "ort.wasm.min.mjs").is_file(), reason="needs `npm ci` in web/")
def test_onnxruntime_web_is_served_from_the_local_npm_package(base_url):
    assert get(base_url + "node_modules/onnxruntime-web/dist/ort.wasm.min.mjs")[0] == "text/javascript"
    assert get(base_url + "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm")[0] == "application/wasm"


@pytest.mark.parametrize("path", ["model/secret.txt", "model/../export/secret.txt", "model/", "no-such-file.js"])
def test_other_files_are_not_found(base_url, path):
    with pytest.raises(urllib.error.HTTPError) as error:
        get(base_url + path)
    assert error.value.code == 404


@pytest.mark.parametrize("path", ["%00", "js/%00.js", "model/%00"])
def test_a_nul_byte_in_the_path_is_a_bad_request(base_url, path):
    with pytest.raises(urllib.error.HTTPError) as error:
        get(base_url + path)
    assert error.value.code == 400


def make_checkpoint(path):
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")


def test_a_checkpoint_is_exported_once_and_again_after_it_changes(tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    make_checkpoint(checkpoint)
    exports = []

    def fake_export(args, parser):
        exports.append((args.model, args.output))
        output = tmp_path / "checkpoint" / "onnx"
        output.mkdir(exist_ok=True)
        (output / "model.json").write_text("{}")
        (output / "model.onnx").write_bytes(b"")

    monkeypatch.setattr(cli.export_onnx, "export", fake_export)
    parser = cli.build_parser()
    assert cli.export_dir_for(parser, checkpoint) == checkpoint / "onnx"
    assert cli.export_dir_for(parser, checkpoint) == checkpoint / "onnx"
    assert exports == [(str(checkpoint), str(checkpoint / "onnx"))]
    later = (checkpoint / "onnx" / "model.json").stat().st_mtime + 10
    os.utime(checkpoint / "model.safetensors", (later, later))  # retrained after the export
    cli.export_dir_for(parser, checkpoint)
    assert len(exports) == 2


def test_an_export_directory_is_served_as_it_is(export_dir):
    assert cli.export_dir_for(cli.build_parser(), export_dir) == export_dir


def test_a_directory_that_is_neither_gets_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.export_dir_for(cli.build_parser(), tmp_path)
    assert "is neither an export (model.json + model.onnx) nor a checkpoint (config.json)" in capsys.readouterr().err


def test_the_export_tests_are_skipped_without_the_web_extra():
    """After the README's plain `pip install -e ".[test]"` (no onnxruntime) the suite still collects."""
    blocked = (
        "import sys, pytest; sys.modules['onnxruntime'] = None; sys.exit(pytest.main(['--collect-only', "
        "'-q', '-p', 'no:cacheprovider', 'tests/cli/test_export_onnx.py']))"
    )
    run = subprocess.run(
        [sys.executable, "-c", blocked],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode in (0, 5) and "error" not in run.stdout.lower(), run.stdout  # 5: every test skipped
