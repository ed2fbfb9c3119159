"""Registers the SVL-DRL environments with Gymnasium (imported by ``svl_env``)."""

from gymnasium.envs.registration import register, registry

ENV_IDS = ("SVLDRL-v0",)
NAMESPACE = "svl_env"
MAX_EPISODE_STEPS = 5  # the env's default max_steps (PixelRL's t_max): the spec tells what episodes do


def register_envs() -> None:
    """Idempotent: importing twice (e.g. ``gym.make("svl_env:SVLDRL-v0")``) warns nothing."""
    if "SVLDRL-v0" not in registry:
        register(
            id="SVLDRL-v0",
            entry_point="svl_env.env:SVLDRLEnv",
            vector_entry_point="svl_env.vector_env:SVLDRLVectorEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
        # gymnasium.pprint_registry() groups an id without a namespace by its entry point's module
        # ("svl_env.env" -> "env"); the spec's namespace puts it under the package's name. The id
        # stays "SVLDRL-v0" (make parses namespaces from the id, so lookups are unchanged).
        registry["SVLDRL-v0"].namespace = NAMESPACE


register_envs()
