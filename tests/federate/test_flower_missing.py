"""Without flwr (the main environment), the Flower integration says which extra it needs."""

from __future__ import annotations

import importlib.util

import pytest

from privet.errors import PrivetError


@pytest.mark.skipif(importlib.util.find_spec("flwr") is not None, reason="flwr is installed")
def test_the_flower_apps_name_the_extra_when_flwr_is_missing():
    from privet.federate import flower  # importable: flwr is imported only when used

    with pytest.raises(PrivetError, match=r"pip install 'privet\[flower\]'"):
        flower.client_app  # noqa: B018 - the attribute access is what builds the app
    with pytest.raises(AttributeError):
        flower.no_such_app  # noqa: B018
