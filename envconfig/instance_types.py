"""What the config accepts for instance types, and how many vCPUs each size has.

The table is deliberately small and explicit: an unknown family is far more often a typo
than a brand-new instance family, and the vCPU count sets the default number of app
processes per server (stage 4).
"""

# family -> architecture. Graviton families (arm64) carry a "g" after the generation digit.
INSTANCE_FAMILIES: dict[str, str] = {
    "t3": "x86_64", "t3a": "x86_64", "t4g": "arm64",
    "m5": "x86_64", "m5a": "x86_64", "m6i": "x86_64", "m6a": "x86_64", "m7i": "x86_64", "m7a": "x86_64",
    "m6g": "arm64", "m7g": "arm64", "m8g": "arm64",
    "c5": "x86_64", "c5a": "x86_64", "c6i": "x86_64", "c6a": "x86_64", "c7i": "x86_64", "c7a": "x86_64",
    "c6g": "arm64", "c7g": "arm64", "c8g": "arm64",
    "r5": "x86_64", "r6i": "x86_64", "r7i": "x86_64", "r6g": "arm64", "r7g": "arm64",
}

# size -> vCPUs for the families above. Burstable (t*) sizes nano..large all have 2 vCPUs;
# for m/c/r, "medium" exists only on Graviton and has 1.
_BURSTABLE_SIZES = {"nano": 2, "micro": 2, "small": 2, "medium": 2, "large": 2, "xlarge": 4, "2xlarge": 8}
_STANDARD_SIZES = {"medium": 1, "large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32,
                   "12xlarge": 48, "16xlarge": 64}


def split_instance_type(instance_type: str) -> tuple[str, str]:
    family, _, size = instance_type.partition(".")
    return family, size


def allowed_sizes(family: str) -> dict[str, int]:
    if family.startswith("t"):
        return _BURSTABLE_SIZES
    sizes = dict(_STANDARD_SIZES)
    if INSTANCE_FAMILIES.get(family) != "arm64":
        sizes.pop("medium")
    return sizes


def vcpu_count(instance_type: str) -> int:
    family, size = split_instance_type(instance_type)
    return allowed_sizes(family)[size]
