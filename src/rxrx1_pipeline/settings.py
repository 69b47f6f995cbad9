"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
# "soft" merging lets an environment (e.g. conf/real) override single nested keys such as HUVEC.model.epochs.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
}
# kedro-viz's run hooks write .viz/ on every run; `kedro viz` works without them.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-viz",)
