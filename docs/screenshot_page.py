"""Screenshot of the browser demo page sampling an exported model (docs/browser.png, shown in docs/browser.md).

Serves the export with diff-serve-demo's server on 127.0.0.1, drives Debian's headless Chromium with Playwright
(`apt-get install chromium`, `pip install -e ".[web]"`, `npm ci` in web/), clicks Generate with the export's own
settings, waits for the sampler to finish and saves the page:

    python docs/screenshot_page.py outputs/browser_demo_web docs/browser.png
"""

import argparse
import shutil
import tempfile
import threading

from diff_trainer.cli.serve_demo import make_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", help="a diff-export-onnx output directory")
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0, help="the page's sampler seed")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    server = make_server(args.export_dir, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1000, "height": 700},
            )
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=120_000)
            if page.evaluate("document.body.dataset.state") != "ready":
                raise SystemExit(f"the page did not load the model: {page.inner_text('#error')}")
            page.fill("#seed", str(args.seed))
            page.click("#generate")
            page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=300_000)
            if page.evaluate("document.body.dataset.state") != "done":
                raise SystemExit(f"sampling failed on the page: {page.inner_text('#error')}")
            page.screenshot(path=args.output, full_page=True)
            print(f"{args.output}: {page.inner_text('#completion')!r} ({page.inner_text('#progress')})")
            context.close()
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
