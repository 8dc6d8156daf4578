"""One worker of a two-worker fine-tuning job on 127.0.0.1 (run by test_distribute.py).

    python multiworker_job.py INDEX PORT0 PORT1 OUTPUT_DIR EPOCHS [DIE_AFTER_EPOCH]

Worker INDEX of the cluster in TF_CONFIG trains the tiny RegNet on the sample
dataset with MultiWorkerMirroredStrategy and prints its history as JSON; with
DIE_AFTER_EPOCH it exits abruptly after that epoch's checkpoint (a lost node).
"""
import json
import os
import sys

index, port0, port1, output_dir, epochs = sys.argv[1:6]
die_after = int(sys.argv[6]) if len(sys.argv) > 6 else None
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
                                      "task": {"type": "worker", "index": int(index)}})
import workbench as wb  # noqa: E402  (first, as in the recipes: it sets up TensorFlow)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)  # two workers share the machine's cores
strategy = wb.make_strategy("multiworker")  # before any other TensorFlow work
from conftest import tiny_regnet  # noqa: E402
from workbench.train.distribute import is_chief  # noqa: E402


class Die(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == die_after:
            print("WORKER", index, "LOST AFTER EPOCH", epoch + 1, flush=True)
            os._exit(17)


data = wb.load_folder(wb.sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=32,
                      augment=False, verbose=False)
result = wb.finetune(tiny_regnet, data, epochs=int(epochs), unfreeze="0:head,1:all", strategy=strategy,
                     precision="float32", output_dir=output_dir, callbacks=[Die()] if die_after is not None else None, verbose=2)
print("RESULT", json.dumps({"history": result.history, "resumed_at": result.resumed_at,
                            "strategy": result.strategy, "chief": is_chief()}), flush=True)
