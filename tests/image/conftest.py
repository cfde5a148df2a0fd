"""The session's station image is built in the background while the other tests run.

The build is mostly dpkg under qemu-user, one process at a time: on two cores it leaves a
core for the rest of the suite, and building it first and waiting would add its 13-15
minutes to every run. So when collection selects a test that needs ``station_image`` (and
no ``HEARTSOUND_TEST_IMAGE`` names one built before), the build starts as a child process
right after collection, those tests move to the end of the run, and ``station_image``
waits for the child. The image lives in a temporary folder removed at the end of the
session; a build still running then is stopped. The build is the command a user runs, so
on a machine that built the same inputs before it copies that image from its cache
(``heartsound image build --rebuild`` builds afresh); CI, on a fresh machine, builds.
"""

from __future__ import annotations

import os

import pytest

from tests.image.background_build import BUILD_KEY, IMAGE_FIXTURE, TEST_IMAGE_ENV, BackgroundBuild


def _needs_image(item: pytest.Item) -> bool:
    return IMAGE_FIXTURE in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: build only for tests that run
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    needing = [item for item in items if _needs_image(item)]
    if not needing:
        return
    items[:] = [item for item in items if not _needs_image(item)] + needing
    if os.geteuid() == 0 and not os.environ.get(TEST_IMAGE_ENV) \
            and not config.getoption("collectonly"):
        config.stash[BUILD_KEY] = BackgroundBuild()


def pytest_unconfigure(config: pytest.Config) -> None:
    build = config.stash.get(BUILD_KEY, None)
    if build is not None:
        build.close()

