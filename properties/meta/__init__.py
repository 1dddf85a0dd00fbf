"""Tests of the test machinery itself: the checker catches broken kernels and reports them."""
