"""Availability zones per region, so a typo in config fails at load time, not at deploy time.

AZ names (not IDs) as AWS lists them for a new account. A region missing here is still
accepted with any `<region><letter>` zone; add it to get the stricter check.
"""

AVAILABILITY_ZONES: dict[str, tuple[str, ...]] = {
    "ap-northeast-2": ("a", "b", "c", "d"),   # Seoul
    "ap-northeast-1": ("a", "c", "d"),        # Tokyo
    "ap-northeast-3": ("a", "b", "c"),        # Osaka
    "ap-southeast-1": ("a", "b", "c"),
    "ap-southeast-2": ("a", "b", "c"),
    "ap-south-1": ("a", "b", "c"),
    "us-east-1": ("a", "b", "c", "d", "e", "f"),
    "us-east-2": ("a", "b", "c"),
    "us-west-2": ("a", "b", "c", "d"),
    "eu-west-1": ("a", "b", "c"),
    "eu-central-1": ("a", "b", "c"),
}
