"""Makes this folder's helper module (``sketch_oracle``) importable: the
suite runs in importlib mode, which adds no test folder to ``sys.path``."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
