"""Who came from whom: families, trees and merges reconstructed from a grid of results."""
