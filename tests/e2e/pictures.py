"""Pictures of live pages, kept under test-artifacts/ as evidence."""

from pathlib import Path


def picture(page, selector: str, path: Path, attempts: int = 5) -> None:
    """Screenshot one panel of a live page.

    A push can replace the panel (an htmx out-of-band swap) between Playwright finding it
    and taking the picture ("Element is not attached to the DOM"); the picture is evidence,
    not the assertion, so take the replacement instead of failing the test.
    """
    from playwright.sync_api import Error

    for attempt in range(attempts):
        try:
            page.locator(selector).screenshot(path=str(path))
            return
        except Error as error:
            if "not attached" not in str(error) or attempt == attempts - 1:
                raise
