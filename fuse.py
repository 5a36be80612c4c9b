"""fuse.py: not implemented yet (see the open issues)."""
import sys

if __name__ == "__main__":
    sys.exit("fuse.py: not implemented yet")
