"""Running the command line in the test process."""
import gin

from text2text import launch


def run_main(*args: str) -> int:
    """launch.main(args) with a fresh gin config before and after; returns the exit code."""
    gin.clear_config()
    try:
        return launch.main(list(args))
    finally:
        gin.clear_config()
