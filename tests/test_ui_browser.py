"""The explorer in a real browser: Debian's headless Chromium driven by Selenium through
/usr/bin/chromedriver. Every page opens with no console error, at desktop width and at 375 px;
a user is found and their history read; a filter changes the list; two versions are compared;
a click is posted and counted; the admin action is refused without the admin key and done with
it; the `<script>` put into a title never runs; the user form works with the keyboard alone."""

from __future__ import annotations

import pytest

from tests.ui_browser import (
    HOSTILE_CATEGORY,
    HOSTILE_ITEM,
    HOSTILE_TITLE,
    PAGES,
    PHONE,
    VISITOR,
    LiveServer,
    add_hostile_item,
    browser_missing,
    chromium,
    console_errors,
    settings_for,
    sign_in,
    two_versions,
    wait_for_new_page,
)

missing = browser_missing()
pytestmark = pytest.mark.skipif(missing is not None, reason=f"no browser: {missing}")

if missing is None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select


@pytest.fixture(scope="module")
def site(models_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    from serving.main import create_app
    from tests.keys import DATA_KEY

    models = two_versions(models_dir, tmp_path_factory.mktemp("ui-browser") / "models")
    app = create_app(settings_for(models))
    with TestClient(app) as client:
        add_hostile_item(client, app.state.context.holder.current)
        server = LiveServer(app)
        driver = chromium()
        try:
            sign_in(driver, server.url, DATA_KEY)
            driver.get_log("browser")  # start each test with an empty console
            yield server, driver, app
        finally:
            driver.quit()
            server.stop()


def open_page(driver, url: str) -> None:
    driver.get(url)
    assert driver.title.endswith("recsys explorer"), driver.page_source[:500]


def navigate(driver, act) -> None:
    """Run `act` (a click, a submit, a key press) and wait for the page it opens."""
    old = driver.find_element(By.TAG_NAME, "html")
    act()
    wait_for_new_page(driver, old)


def column(driver, table_id: str) -> list[str]:
    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} .title")]


def test_every_page_opens_without_console_errors_at_desktop_and_375px(site):
    server, driver, _ = site
    for size in ((1280, 900), PHONE):
        driver.set_window_size(*size)
        for name, path in PAGES.items():
            open_page(driver, server.url + path)
            assert console_errors(driver) == [], name
            # nothing wider than the screen: wide tables scroll inside their own box
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{name} at {size[0]} px is {overflow} px too wide"
    driver.set_window_size(1280, 900)


def test_find_a_user_and_see_their_history_titles(site):
    server, driver, app = site
    model = app.state.context.holder.current
    open_page(driver, server.url + "/ui/users")
    field = driver.find_element(By.ID, "user_id")
    field.send_keys(VISITOR)
    navigate(driver, field.submit)
    assert column(driver, "history") == [model.titles[0], model.titles[1], HOSTILE_TITLE]
    assert len(column(driver, "recs")) == 10
    assert console_errors(driver) == []


def test_changing_a_filter_changes_the_list(site):
    server, driver, app = site
    model = app.state.context.holder.current
    user = next(iter(model.users))
    open_page(driver, f"{server.url}/ui/users?user_id={user}")
    before = column(driver, "recs")
    k = driver.find_element(By.ID, "k")
    k.clear()
    k.send_keys("4")
    category = model.category_names[int(model.item_categories[model.state.popular_rows_[0]])]
    Select(driver.find_element(By.ID, "category")).select_by_value(category)
    navigate(driver, driver.find_element(By.CSS_SELECTOR,
                                         "form.controls button[type=submit]").click)
    after = column(driver, "recs")
    assert 0 < len(after) <= 4 and after != before[:len(after)]
    assert Select(driver.find_element(By.ID, "category")).all_selected_options[0] \
        .get_attribute("value") == category


def test_compare_two_versions(site):
    server, driver, _ = site
    open_page(driver, f"{server.url}/ui/users?user_id={VISITOR}")
    Select(driver.find_element(By.ID, "compare")).select_by_value("v2")
    navigate(driver, driver.find_element(By.CSS_SELECTOR,
                                         "form.controls button[type=submit]").click)
    overlap = driver.find_element(By.ID, "overlap").text
    assert overlap.startswith("v1 and v2:") and overlap.endswith("of 10 items in common.")
    rows = driver.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr")
    assert len(rows) == 10


def test_post_a_click_and_see_it_counted(site):
    server, driver, app = site
    store = app.state.context.store
    open_page(driver, f"{server.url}/ui/live?user_id={VISITOR}")
    count = int(driver.find_element(By.ID, "live-count").text)
    stored = store.count()
    picked = Select(driver.find_element(By.ID, "item_id")).first_selected_option.text
    navigate(driver, driver.find_element(By.ID, "post-click").click)
    assert driver.find_element(By.ID, "posted").is_displayed()
    assert int(driver.find_element(By.ID, "live-count").text) == count + 1
    assert store.count() == stored + 1
    assert driver.find_elements(By.CSS_SELECTOR, "#live-events .title")[0].text == picked
    assert console_errors(driver) == []


def test_promote_needs_the_admin_key(site):
    from tests.keys import ADMIN_KEY

    server, driver, app = site
    holder = app.state.context.holder
    open_page(driver, server.url + "/ui/models")
    navigate(driver, driver.find_element(By.CSS_SELECTOR,
                                         "button[aria-label='Promote v2']").click)
    assert "admin key" in driver.find_element(By.CSS_SELECTOR, "[role=alert]").text
    assert holder.current.version == "v1"
    driver.get_log("browser")  # the 403 itself is logged as a failed resource
    sign_in(driver, server.url, ADMIN_KEY, then="/ui/models")
    navigate(driver, driver.find_element(By.CSS_SELECTOR,
                                         "button[aria-label='Promote v2']").click)
    assert driver.find_element(By.ID, "done").text == "now serving v2"
    assert driver.find_element(By.ID, "serving").text == "v2" and holder.current.version == "v2"
    navigate(driver, driver.find_element(By.ID, "rollback").click)
    assert driver.find_element(By.ID, "serving").text == "v1" and holder.current.version == "v1"
    assert console_errors(driver) == []


def test_the_injected_script_never_runs(site):
    server, driver, _ = site
    for path in (f"/ui/items/{HOSTILE_ITEM}", f"/ui/users?user_id={VISITOR}",
                 "/ui/items?q=glass+beaker", f"/ui/try?item={HOSTILE_ITEM}"):
        open_page(driver, server.url + path)
        assert driver.execute_script("return window.__pwned === undefined"), path
        assert driver.find_elements(By.CSS_SELECTOR, "main script, main img[src=x]") == []
        assert console_errors(driver) == [], path
    open_page(driver, f"{server.url}/ui/items/{HOSTILE_ITEM}")
    assert driver.find_element(By.ID, "item-title").text == HOSTILE_TITLE
    assert driver.find_element(By.ID, "item-category").text == HOSTILE_CATEGORY


def test_the_user_form_with_the_keyboard_alone(site):
    server, driver, _ = site
    open_page(driver, server.url + "/ui/users")
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    active = driver.switch_to.active_element
    assert active.text == "Skip to content"
    order = []
    for _ in range(30):
        active.send_keys(Keys.TAB)
        active = driver.switch_to.active_element
        order.append(active.get_attribute("id") or active.text)
        if active.get_attribute("id") == "user_id":
            break
    assert order[:6] == ["Overview", "User", "Item", "Try it", "Models", "Live"]
    assert order[-1] == "user_id"
    navigate(driver, lambda: active.send_keys(VISITOR, Keys.ENTER))
    assert HOSTILE_TITLE in column(driver, "history")  # the visitor's history
    # every form field has a label
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input:not([type=hidden]), select')]"
        ".filter(e => !e.labels || e.labels.length === 0).map(e => e.name)")
    assert unlabelled == []
