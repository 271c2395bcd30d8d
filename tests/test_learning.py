"""A short STBP run on real digits: the loss falls and accuracy is far above chance."""

import torch

import stbp
from stbp.data import MNIST10k


def test_stbp_learns_real_digits():
    torch.manual_seed(0)
    train, test = MNIST10k(train=True), MNIST10k(train=False)
    model = stbp.build("8C3(Enc)-AP2-32FC-Voting", (1, 28, 28), T=4)
    stbp.calibrate_(model, train.images[:64])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(200):
        idx = torch.randint(0, len(train), (32,))
        loss = stbp.rate_mse_loss(model(train.images[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(test.images[:1000]).argmax(1) == test.labels[:1000]).float().mean()
    assert sum(losses[-30:]) < 0.6 * sum(losses[:30])
    assert accuracy > 0.8, f"accuracy {accuracy:.3f} after 200 steps"
