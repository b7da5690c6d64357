"""Typed per-environment config, loaded from config/<env>.toml and validated before any construct is built."""

from envconfig.loader import ConfigError, available_environments, load_environment, load_environments
from envconfig.model import EnvironmentConfig, Stage

__all__ = ["ConfigError", "EnvironmentConfig", "Stage", "available_environments", "load_environment",
           "load_environments"]
