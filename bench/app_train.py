"""Benchmark: the Train page's default run in the app, as the README starts it, against the
same run from the CLI, measured in one invocation (this machine is shared and noisy).

    .venv/bin/python bench/app_train.py                 # data found as the app finds it
    MNIST_DIR=../shared/mnist .venv/bin/python bench/app_train.py --rounds 2

App: `.venv/bin/streamlit run streamlit_app.py` plus only a port and headless mode; headless
Chromium opens /train, clicks "Start training" with the page's defaults, and the clock stops
when "Done:" is on screen. CLI: the whole `python -m core train --model fast` process (the
same model, epochs and data as the page's defaults), torch import included. Bar: app <= 1.5x CLI.
It drives Chromium, so it lives outside core.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import CHROMIUM, CHROMIUM_ARGS, streamlit_server, wait_until_idle  # noqa: E402

BAR = 1.5


def cli_run(env: dict, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "core", "train", "--model", "fast", "--out", str(out)], cwd=ROOT,
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def app_run(browser, url: str) -> tuple[float, str]:
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.goto(f"{url}/train")
    wait_until_idle(page, "Train")
    t0 = time.perf_counter()
    page.get_by_role("button", name="Start training").click()
    done = page.get_by_text("Done:", exact=False).first
    done.wait_for(timeout=20 * 60_000)
    seconds = time.perf_counter() - t0
    text = done.inner_text()
    page.context.close()
    return seconds, text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1, help="CLI, app, CLI ... alternating; medians are compared")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    env = {**os.environ}
    with tempfile.TemporaryDirectory(prefix="mnist-lab-bench-") as tmp:
        tmp = Path(tmp)
        env["MNIST_LAB_WORKSPACES"] = str(tmp / "ws")
        cli, app = [], []
        with streamlit_server({"MNIST_LAB_WORKSPACES": env["MNIST_LAB_WORKSPACES"]}, tmp / "server.log") as url, \
                sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for r in range(args.rounds):
                cli.append(cli_run(env, tmp / f"cli-{r}"))
                print(f"round {r + 1}: CLI process {cli[-1]:.1f} s", flush=True)
                seconds, text = app_run(browser, url)
                app.append(seconds)
                print(f"round {r + 1}: app click-to-Done {seconds:.1f} s ({text.splitlines()[0][:120]})", flush=True)
            cli.append(cli_run(env, tmp / "cli-last"))
            print(f"closing CLI process {cli[-1]:.1f} s", flush=True)
            browser.close()
    ratio = statistics.median(app) / statistics.median(cli)
    print(f"app {statistics.median(app):.1f} s vs CLI {statistics.median(cli):.1f} s (medians): {ratio:.2f}x "
          f"-> {'PASS' if ratio <= BAR else 'FAIL'} (bar <= {BAR}x)")
    return 0 if ratio <= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
