"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {"base_env": "base", "default_run_env": "local"}
# kedro-viz's run hooks write .viz/ on every run; `kedro viz` works without them.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-viz",)
