"""Data sets bundled with edgefleet: real MNIST digits and gprMax-simulated GPR B-scans."""
