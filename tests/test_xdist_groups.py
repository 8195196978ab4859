"""The suite relies on ``pytest -n 2 --dist loadgroup`` keeping an ``xdist_group`` on one
worker (fixtures that build runs once, recipes that share a compiled program). pytest-xdist
marks a grouped test by suffixing its node id with ``@<group>``; a pytest/xdist pairing that
drops the suffix spreads every group over both workers without a word (pytest 9 with xdist
3.8 did)."""

import pytest

pytestmark = pytest.mark.xdist_group("xdist_group_check")


def test_grouped_tests_carry_their_group_on_loadgroup_workers(request):
  on_loadgroup_worker = bool(getattr(request.config.option, "loadgroup", False))
  assert request.node.nodeid.endswith("@xdist_group_check") == on_loadgroup_worker
