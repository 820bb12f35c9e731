"""``python -m mixerzoo.train [train|finetune|eval] ...`` (also under ``torchrun``)."""

from mixerzoo.train._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
