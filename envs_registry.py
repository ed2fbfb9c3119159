"""Registers the SVL-DRL environments with Gymnasium (imported by ``svl_env``)."""

from gymnasium.envs.registration import register, registry

ENV_IDS = ("SVLDRL-v0",)


def register_envs() -> None:
    """Idempotent: importing twice (e.g. ``gym.make("svl_env:SVLDRL-v0")``) warns nothing."""
    if "SVLDRL-v0" not in registry:
        register(
            id="SVLDRL-v0",
            entry_point="svl_env.env:SVLDRLEnv",
            vector_entry_point="svl_env.vector_env:SVLDRLVectorEnv",
        )


register_envs()
