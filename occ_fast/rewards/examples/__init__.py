"""Example reward functions for ``--reward.fn package.module:function`` (training) and ``--reward`` (eval)."""
