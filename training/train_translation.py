"""Train a translation model, pick it on validation BLEU, score it on the test set:

    accelerate launch training/train_translation.py --config translation_de_en [...]

It runs `main` of hf_encoders/tasks/translation/train.py, as `hf-encoders train-translation` does.
"""

from hf_encoders.tasks.translation.train import main

if __name__ == "__main__":
    main()
