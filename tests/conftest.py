import pytest

pytest_plugins = [
    "tests.support.couch_fixtures",
    "tests.support.rapidpro_fixtures",
    "tests.support.workers",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that runs a whole worker (in-process here; the daemon modules mark themselves) takes
    # seconds: `-m "not slow"` leaves it out of the quick loop.
    for item in items:
        if "in_process_workers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
