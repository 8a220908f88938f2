"""`python -m tests.train.kill_after_checkpoint ARGS` (or under torchrun): `vidsel train ARGS` whose
process SIGKILLs itself inside the optimizer step after the checkpoint of (epoch, batch) given by
VIDSEL_TEST_KILL_AT="epoch,batch": gradients computed, weights not yet updated. A fixed point, so the
resume tests do not depend on a poller catching the run in time."""

import os
import signal
import sys

import torch.nn.functional as F

from vidsel.train import loop, main

EPOCH, BATCH = (int(v) for v in os.environ["VIDSEL_TEST_KILL_AT"].split(","))
save = loop.Trainer.save


def dying_step(model, optimizer, scheduler, clips, labels, grad_clip=0.0):
    F.cross_entropy(model(clips), labels).backward()
    os.kill(os.getpid(), signal.SIGKILL)


def saving(self):
    save(self)
    if self.progress["epoch"] == EPOCH and self.progress["batch"] == BATCH:
        loop.train_step = dying_step


loop.Trainer.save = saving

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
