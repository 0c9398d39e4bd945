"""`python -m vidctrl` (and `accelerate launch -m vidctrl`) run the same CLI as `vidctrl`."""

from vidctrl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
