"""Train, evaluate, infer or score a T5 model: `python run.py --gin_file=gin_configs/demo.gin`."""
import sys

from text2text import launch

if __name__ == "__main__":
    sys.exit(launch.cli(sys.argv[1:]))
