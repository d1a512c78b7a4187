"""The app shell as users get it: started with the README's own command, Streamlit's own
navigation (no pages/ folder, no private modules), and a fresh server's first visitor.
"""
from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path

import pytest

from helpers import (CHROMIUM, CHROMIUM_ARGS, ROOT, TEST_FLAGS, app_argv, readme_app_command, require_chromium,
                     server_pid, streamlit_server)

MENU = ["Home", "Draw", "Data", "Train", "Fine-tune", "Evaluate", "Export", "Insights"]


def test_browser_tests_start_the_app_exactly_as_the_readme_does():
    readme = readme_app_command()
    assert readme == [".venv/bin/streamlit", "run", "streamlit_app.py"], readme
    argv = app_argv(8599)
    assert argv[0].endswith("/streamlit") and argv[1:len(readme)] == readme[1:]
    extra = argv[len(readme):]
    assert [a for a in extra if a.startswith("--")] == list(TEST_FLAGS), extra  # a port and headless, nothing else
    # Every setting the app needs lives in the config file users get too.
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["fileWatcherType"] == "none"
    assert {".venv", "runs", "data"} <= set(server["folderWatchBlacklist"])


def test_no_legacy_pages_folder_and_no_private_streamlit_modules():
    assert not (ROOT / "pages").exists(), "a pages/ folder puts Streamlit in its legacy multipage mode"
    assert (ROOT / "app_pages" / "home.py").is_file()
    for f in [*ROOT.glob("app_pages/*.py"), ROOT / "streamlit_app.py", *ROOT.glob("core/*.py")]:
        text = f.read_text()
        assert not re.search(r"streamlit\.(runtime|web|elements|commands)\b", text), f"{f.name} uses Streamlit internals"
        assert "PagesManager" not in text and "uses_pages_directory" not in text, f.name


# Records every menu the sidebar ever shows, from the first paint on (a MutationObserver
# installed before any of the page's scripts run).
WATCH_MENU = r"""() => {
  window.__menus = [];
  const seen = new Set();
  const record = () => {
    const nav = document.querySelector('[data-testid="stSidebarNav"]');
    if (!nav) return;
    const items = [...nav.querySelectorAll('[data-testid="stSidebarNavLink"]')].map(a => a.innerText.trim().split('\n').pop().trim());
    const key = items.join('|');
    if (items.length && !seen.has(key)) { seen.add(key); window.__menus.push(items); }
    const h1 = document.querySelector('h1');
    if (h1 && window.__titleAt == null) { window.__titleAt = performance.now(); window.__title = h1.innerText; }
  };
  new MutationObserver(record).observe(document, {subtree: true, childList: true, characterData: true});
}"""


@pytest.mark.parametrize("path, title", [("", "MNIST Lab"), ("evaluate", "Evaluate")])
def test_first_visitor_of_a_fresh_server_sees_only_the_apps_menu(path, title, mnist_dir, tmp_path):
    require_chromium()
    from playwright.sync_api import sync_playwright

    env = {"MNIST_DIR": str(mnist_dir), "MNIST_LAB_WORKSPACES": str(tmp_path / "ws")}
    with streamlit_server(env, tmp_path / "server.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.add_init_script(f"({WATCH_MENU})()")
        t0 = time.monotonic()
        page.goto(f"{url}/{path}")
        page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=120_000)
        seconds = time.monotonic() - t0
        page.wait_for_timeout(1500)  # anything that would replace the menu after the title
        menus = page.evaluate("window.__menus")
        browser.close()
    print(f"first visit to /{path}: title after {seconds:.1f} s; menus seen: {menus}")
    assert menus, "the sidebar never showed a menu"
    for items in menus:
        assert items == MENU, f"the sidebar showed {items}, not the app's menu"


def test_a_started_server_loads_what_the_first_visitor_needs_before_anyone_visits(mnist_dir, tmp_path):
    """streamlit_app.py's st.App lifespan imports, at start-up, what a fresh server's first Draw
    visitor used to wait for (pandas and pyarrow, which the canvas's first render pulls in; onnxruntime
    for the first prediction), and never torch. Read from the server's memory map, with no visitor."""
    want = {"pandas": "pandas/_libs", "pyarrow": "libarrow", "onnxruntime": "onnxruntime_pybind11_state"}
    env = {"MNIST_DIR": str(mnist_dir), "MNIST_LAB_WORKSPACES": str(tmp_path / "ws")}
    with streamlit_server(env, tmp_path / "server.log") as url:
        maps = Path(f"/proc/{server_pid(url)}/maps")
        deadline = time.monotonic() + 60
        while (missing := [m for m, lib in want.items() if lib not in (text := maps.read_text())]) \
                and time.monotonic() < deadline:
            time.sleep(0.25)
    assert not missing, f"not loaded at start-up: {missing}"
    assert "libtorch" not in text, "the serving path must not load torch"
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir()), "nobody visited"


def test_readme_engine_table_lists_every_core_module():
    text = (ROOT / "README.md").read_text()
    table = text.split("## The engine (`core/`)", 1)[1].split("###", 1)[0]
    listed = set(re.findall(r"`([a-z_]+\.py)`", table))
    modules = {p.name for p in (ROOT / "core").glob("*.py")}
    assert modules - listed == set(), f"core modules missing from the README's engine table: {modules - listed}"
    assert listed - modules == set(), f"the README lists modules that do not exist: {listed - modules}"


def test_no_module_uses_another_modules_private_names():
    for f in [*ROOT.glob("core/*.py"), *ROOT.glob("app_pages/*.py")]:
        for m in re.finditer(r"from \.?([\w.]+) import ([^\n]+)", f.read_text()):
            names = [n.strip(" ()").split(" as ")[0] for n in m.group(2).split(",")]
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{f.name} imports private names {private} from {m.group(1)}"
        assert not re.search(r"\b(?:data|train|export|inference|checkpoint)\._[a-z]", f.read_text()), \
            f"{f.name} reaches into another module's private names"
