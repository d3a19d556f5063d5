"""Helpers for the explorer's tests and screenshots: a models folder with two versions, a
catalogue item whose title and category try to inject HTML, a server on loopback, and headless
Chromium driven by Selenium through Debian's chromedriver (never a downloaded driver).

`python -m tests.ui_browser docs/ui MODELS` takes the README's screenshots of each page."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from recsys.bundle_versions import MANIFEST
from serving.testing import copy_bundle, copy_models
from tests.keys import ADMIN_KEY, DATA_KEY

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HOSTILE_TITLE = '<script>window.__pwned = 1</script>"onerror=window.__pwned=2 x'
HOSTILE_CATEGORY = '"><img src=x onerror="window.__pwned=3">'
HOSTILE_ITEM = "hostile-item"
VISITOR = "visitor-1"
DESKTOP, PHONE = (1280, 900), (375, 812)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found: install Debian's {package} (make test does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def two_versions(models_dir: Path, target: Path) -> Path:
    """A copy of the test models folder with v1 (CURRENT) and v2, the same bundle serving its
    retrieval order instead of the ranker, so the two rank differently."""
    models = copy_models(models_dir, target)

    def retrieval_order(bundle: Path) -> None:
        manifest = json.loads((bundle / MANIFEST).read_text())
        manifest["ranker"] = {**(manifest.get("ranker") or {}), "used": False}
        manifest["created_at"] = "2099-01-01T00:00:00+00:00"  # newest in the listing
        (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2))

    copy_bundle(models, "v1", "v2", retrieval_order)
    return models


def settings_for(models: Path, **extra):
    from serving.settings import Settings

    return Settings(models_dir=models, api_keys=[DATA_KEY], admin_key=ADMIN_KEY,
                    poll_current_s=0, rate_limit_per_s=1000, rate_limit_burst=1000, **extra)


def add_hostile_item(client, recommender) -> None:
    """Through the API, as any catalogue change: an item whose text tries to inject markup,
    and a visitor who clicked it and two other items (so their history shows its title)."""
    put = client.put("/items", headers={"X-API-Key": DATA_KEY}, json={"items": [{
        "item_id": HOSTILE_ITEM, "title": HOSTILE_TITLE, "category": HOSTILE_CATEGORY,
        "text": "a glass beaker for the lab " + HOSTILE_TITLE}]})
    assert put.status_code == 200, put.text
    events = [{"event_id": f"seed-{n}", "user_id": VISITOR, "item_id": item, "type": "click",
               "timestamp": time.time() - 60 + n}
              for n, item in enumerate([recommender.item_ids[0], recommender.item_ids[1],
                                        HOSTILE_ITEM])]
    posted = client.post("/events", headers={"X-API-Key": DATA_KEY}, json={"events": events})
    assert posted.status_code == 200, posted.text


class LiveServer:
    """`app` served by uvicorn on a free loopback port, in a thread, until `stop`."""

    def __init__(self, app) -> None:
        import uvicorn

        from tests.processes import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_config=None, access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the explorer's test server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def chromium(size: tuple[int, int] = DESKTOP):
    """Headless Chromium with its console log readable (`driver.get_log("browser")`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--no-first-run", "--disable-extensions", "--disable-background-networking",
                 "--hide-scrollbars", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver path is given, so Selenium Manager never looks for (or downloads) one
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    driver.set_page_load_timeout(60)
    return driver


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")
            if entry.get("level") == "SEVERE"]


def sign_in(driver, base: str, key: str, then: str = "/ui") -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/ui/login?next={then}")
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    old = driver.find_element(By.TAG_NAME, "html")
    field.submit()
    wait_for_new_page(driver, old)


def wait_for_new_page(driver, old) -> None:
    """Wait until the page whose root element was `old` is replaced and the new one is loaded
    (the old root goes stale before the new document is parsed)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def replaced(_) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:
            # stale, or (mid-navigation) "Node ... does not belong to the document": gone
            return True
        return False

    wait = WebDriverWait(driver, 60, ignored_exceptions=(WebDriverException,))
    wait.until(replaced)
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")


PAGES = {  # name -> path, for every page of the explorer
    "overview": "/ui",
    "user": f"/ui/users?user_id={VISITOR}&compare=v2",
    "items": "/ui/items?q=glass",
    "item": f"/ui/items/{HOSTILE_ITEM}",
    "try": f"/ui/try?item={HOSTILE_ITEM}&q=glass",
    "models": "/ui/models",
    "live": f"/ui/live?user_id={VISITOR}",
}


def screenshots(out: Path, models_dir: Path) -> list[Path]:
    """A PNG of each page at desktop width and at 375 px, from a server on a copy of
    `models_dir` (with a second version and the seeded visitor)."""
    import tempfile

    from fastapi.testclient import TestClient

    from serving.main import create_app

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        models = two_versions(models_dir, Path(scratch) / "models")
        app = create_app(settings_for(models))
        with TestClient(app) as client:
            add_hostile_item(client, app.state.context.holder.current)
            server = LiveServer(app)
            try:
                for label, size in (("desktop", DESKTOP), ("375px", PHONE)):
                    driver = chromium(size)
                    try:
                        sign_in(driver, server.url, ADMIN_KEY)
                        sign_in(driver, server.url, DATA_KEY)
                        for name, path in PAGES.items():
                            driver.get(server.url + path)
                            height = driver.execute_script(
                                "return document.documentElement.scrollHeight")
                            driver.set_window_size(size[0], min(max(height, size[1]), 1800))
                            target = out / f"{name}-{label}.png"
                            driver.save_screenshot(str(target))
                            _shrink(target)
                            written.append(target)
                            driver.set_window_size(*size)
                    finally:
                        driver.quit()
            finally:
                server.stop()
    return written


def _shrink(png: Path) -> None:
    """Re-save a screenshot with a 64-colour palette: a third of the bytes, text still sharp."""
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.ui_browser OUT_DIR MODELS_DIR")
    for path in screenshots(Path(sys.argv[1]), Path(sys.argv[2])):
        print(path)
