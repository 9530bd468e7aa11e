"""MuJoCo simulation: an SO-100-class arm, language-conditioned tasks and scripted demonstrators.

env = make_env("pick_place")            # or SimEnv("reach", image_size=96, render=False)
obs = env.reset(seed=0)                 # {"observation.state": (6,), "observation.images.*",
                                        #  "observation.environment_state": (n,)}
demonstrator = make_demonstrator(env, np.random.default_rng(0), failure_prob=0.3)
while not demonstrator.done:
    action, labels = demonstrator.act()       # float32 (6,), Labels
    obs = env.step(action)
"""

from sim import render  # noqa: F401  (first: picks the OpenGL backend before mujoco loads)
from sim.env import SimEnv, evaluate_demonstrator, make_env
from sim.robot import JOINT_NAMES
from sim.tasks import TASKS, Demonstrator, Labels, Task, make_demonstrator

__all__ = [
    "JOINT_NAMES",
    "TASKS",
    "Demonstrator",
    "Labels",
    "SimEnv",
    "Task",
    "evaluate_demonstrator",
    "make_demonstrator",
    "make_env",
]
