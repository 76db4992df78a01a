"""The mount-table helpers a netns VM uses to drop other namespaces' mounts from its copy."""

from __future__ import annotations

from pathlib import Path

from cloud_api_adaptor.localvm.netns import mounts_under, parse_mount_points

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:25 / /run rw shared:5 - tmpfs tmpfs rw
41 30 0:4 / /run/netns rw shared:9 - tmpfs tmpfs rw
42 41 0:4 net:[4026532290] /run/netns/caa-0123456789 rw shared:9 - nsfs nsfs rw
43 41 0:4 net:[4026532291] /run/netns/with\\040space rw shared:9 - nsfs nsfs rw
44 30 0:26 / /run/netns-other rw - tmpfs tmpfs rw
"""


def test_mount_points_are_read_with_octal_escapes_undone() -> None:
    points = parse_mount_points(MOUNTINFO)
    assert points == [
        "/",
        "/run",
        "/run/netns",
        "/run/netns/caa-0123456789",
        "/run/netns/with space",
        "/run/netns-other",
    ]


def test_mounts_under_a_directory_come_deepest_first_and_exclude_siblings() -> None:
    points = parse_mount_points(MOUNTINFO)
    assert mounts_under(points, Path("/run/netns")) == [
        "/run/netns/with space",
        "/run/netns/caa-0123456789",
        "/run/netns",
    ]
    assert mounts_under(points, Path("/media")) == []
