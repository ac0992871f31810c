pytest_plugins = [
    "tests.support.couch_fixtures",
    "tests.support.rapidpro_fixtures",
    "tests.support.workers",
]
