"""Headless Chromium for the browser tests, and the few steps they repeat.

Debian's ``chromium`` is driven through Debian's ``chromedriver`` (the same version as the
browser; ``make test`` installs both). Both paths go to Selenium explicitly: with a driver
path in ``Service`` the Python binding never starts Selenium Manager (see
``selenium/webdriver/common/driver_finder.py``), so nothing is downloaded. Selenium's own
``SE_CHROMEDRIVER`` still overrides the driver path, as it does everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver as AnyDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

T = TypeVar("T")

# No GPU and no sandbox in containers; no traffic of the browser's own (component updates,
# safe-browsing lists, variations): a test's only connections are to its loopback server.
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-dev-shm-usage",
)
INSTALL_HINT = (
    "run `make test` (it installs them) or `apt-get install chromium chromium-driver`, "
    "or set CARETALLY_CHROMIUM / CARETALLY_CHROMEDRIVER"
)


class BrowserMissing(RuntimeError):
    """Chromium or chromedriver is not installed where the harness looks."""


def _executable(kind: str, path: str | None) -> str:
    if not path or not Path(path).is_file() or not os.access(path, os.X_OK):
        raise BrowserMissing(f"no {kind} executable (looked at {path or 'PATH'}): {INSTALL_HINT}")
    return path


def binaries() -> tuple[str, str]:
    """The browser and the driver: ``CARETALLY_CHROMIUM`` / ``CARETALLY_CHROMEDRIVER``, else
    ``chromium`` / ``chromedriver`` on PATH (the browser also at /usr/bin/chromium)."""
    browser = (
        os.environ.get("CARETALLY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    )
    driver = os.environ.get("CARETALLY_CHROMEDRIVER") or shutil.which("chromedriver")
    return _executable("chromium", browser), _executable("chromedriver", driver)


def chromium_options(browser: str, window: tuple[int, int] = (1366, 900)) -> Options:
    options = Options()
    options.binary_location = browser
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    return options


@contextmanager
def chromium(window: tuple[int, int] = (1366, 900)) -> Iterator[WebDriver]:
    """A headless Chromium session; the driver (and with it the browser) always quits."""
    browser, driver_path = binaries()
    service = Service(executable_path=driver_path, log_output=subprocess.DEVNULL)
    try:
        driver = webdriver.Chrome(service=service, options=chromium_options(browser, window))
    except WebDriverException as exc:
        raise BrowserMissing(
            f"chromium did not start ({browser}, {driver_path}): {exc.msg}"
        ) from exc
    try:
        yield driver
    finally:
        driver.quit()


def page_excerpt(driver: AnyDriver, limit: int = 300) -> str:
    """The start of the page's visible text, for failure messages."""
    try:
        text: str = driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException as exc:
        return f"<no body: {exc.msg}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def wait_until(
    driver: AnyDriver,
    predicate: Callable[[AnyDriver], Literal[False] | T],
    timeout: float = 10.0,
    message: str = "condition not met",
) -> T:
    """The predicate's first truthy value; on timeout an AssertionError naming the message,
    the current URL and what the page shows."""
    try:
        # a live page may replace what the predicate was reading: read it again
        return WebDriverWait(
            driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
        ).until(predicate)
    except TimeoutException:
        raise AssertionError(
            f"{message} within {timeout:g}s at {driver.current_url}; "
            f"page shows: {page_excerpt(driver)!r}"
        ) from None


def text_of(driver: AnyDriver, css: str) -> str:
    """The visible text of the first element matching ``css``."""
    text: str = driver.find_element(By.CSS_SELECTOR, css).text
    return text


def fill_and_submit(driver: AnyDriver, form_css: str, fields: Mapping[str, str]) -> None:
    """Type each value into the form's field of that name (choose it in a ``<select>``),
    then click the form's submit button as a user would (or submit the form if it has none).
    """
    form = driver.find_element(By.CSS_SELECTOR, form_css)
    for name, value in fields.items():
        field = form.find_element(By.NAME, name)
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)
    buttons = form.find_elements(By.CSS_SELECTOR, "button[type=submit], input[type=submit]")
    if not buttons:
        buttons = form.find_elements(By.CSS_SELECTOR, "button:not([type])")
    if buttons:
        buttons[0].click()
    else:
        form.submit()
