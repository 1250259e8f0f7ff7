"""The README's demo pictures: start demo.py on a trained model, upload photos in headless
chromium (Playwright, as tests/test_demo.py drives it), save docs/demo.png and
docs/demo-same-or-different.png.

    python benchmarks/screenshots.py --model-dir saved_models --data-dir BASE.zip QUERY.jpg SAME.jpg

QUERY is classified; QUERY against SAME (another image of its class) on the second tab. Needs
requirements-demo.txt and Debian's chromium. A second call is fast: the demo reads the gallery
of exemplar embeddings that a first call (or Test_Cifar-100.py) left beside the model.
"""
import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="saved_models")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("query")
    p.add_argument("same")
    args = p.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = subprocess.Popen([sys.executable, "demo.py", "--model-dir", args.model_dir, "--data-dir", args.data_dir,
                             "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):   # exemplars are read and embedded before the page serves
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#classes").wait_for()
            page.locator("#query input[type=file]").set_input_files(args.query)
            page.locator("#query img").wait_for()
            page.locator("#classify").click()
            expect(page.locator("#top")).to_contain_text("%", timeout=120_000)
            page.locator("#neighbours img").first.wait_for(timeout=120_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ROOT / "docs" / "demo.png"), full_page=True)
            page.get_by_role("tab", name="Same or different?").click()
            for target, path in (("image-a", args.query), ("image-b", args.same)):
                page.locator(f"#{target} input[type=file]").set_input_files(path)
                page.locator(f"#{target} img").wait_for()
            page.locator("#compare").click()
            page.locator("#p-same .percent").wait_for(timeout=120_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(ROOT / "docs" / "demo-same-or-different.png"), full_page=True)
            browser.close()
    finally:
        demo.terminate()
        demo.wait(30)
    print("wrote docs/demo.png and docs/demo-same-or-different.png")


if __name__ == "__main__":
    main()
