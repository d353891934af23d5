//! The fan-out tree the launchers talk over, like Slurm's `TreeWidth`: rank 0 (the first
//! node) connects to its `width` children, each of them to its own children, and so on. A
//! node relays its children's reports up and its parent's orders down, so no launcher holds
//! more than `width` control connections, whatever the job's size. Pure arithmetic on ranks
//! (a node's index in the job's node list).

use std::ops::Range;
use std::time::Duration;

/// The default fan-out: at most this many children per launcher (a 10,000-node job is
/// then 3 levels deep below rank 0).
pub const DEFAULT_WIDTH: usize = 32;

/// Extra time each level of relays adds to its parent's wait, so that a relay names a
/// silent node below it before its own parent gives up on the relay.
pub const LEVEL_MARGIN: Duration = Duration::from_secs(2);

/// The tree over `nodes` ranks with at most `width` children per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tree {
    /// Number of nodes (ranks `0..nodes`).
    pub nodes: usize,
    /// Children per node, at least 1.
    pub width: usize,
}

impl Tree {
    /// The tree over `nodes` ranks; a width of 0 is taken as 1.
    pub fn new(nodes: usize, width: usize) -> Self {
        Tree {
            nodes,
            width: width.max(1),
        }
    }

    /// The ranks `rank` connects to.
    pub fn children(&self, rank: usize) -> Range<usize> {
        let first = rank.saturating_mul(self.width).saturating_add(1);
        let end = first.saturating_add(self.width);
        first.min(self.nodes)..end.min(self.nodes)
    }

    /// The rank that connects to `rank`; none for rank 0.
    pub fn parent(&self, rank: usize) -> Option<usize> {
        (rank > 0).then(|| (rank - 1) / self.width)
    }

    /// How many levels below rank 0 `rank` is.
    pub fn depth(&self, rank: usize) -> usize {
        let mut depth = 0;
        let mut r = rank;
        while let Some(p) = self.parent(r) {
            depth += 1;
            r = p;
        }
        depth
    }

    /// How many levels the tree has below rank 0 (the depth of its last rank).
    pub fn height(&self) -> usize {
        self.depth(self.nodes.saturating_sub(1))
    }

    /// How many nodes `rank`'s subtree holds, `rank` included.
    pub fn subtree_size(&self, rank: usize) -> usize {
        let (mut first, mut last, mut size) = (rank, rank, 0);
        while first < self.nodes {
            size += last.min(self.nodes - 1) - first + 1;
            first = first.saturating_mul(self.width).saturating_add(1);
            last = last.saturating_mul(self.width).saturating_add(self.width);
        }
        size
    }

    /// How long `rank` waits for every node below it, given how long the job waits
    /// (`--wait-timeout`): the deepest relays wait exactly that, each level above them
    /// `LEVEL_MARGIN` more, so a failure is named by the relay nearest to it.
    pub fn wait_below(&self, rank: usize, wait: Duration) -> Duration {
        let levels_below = self.height().saturating_sub(self.depth(rank) + 1);
        wait + LEVEL_MARGIN * u32::try_from(levels_below).unwrap_or(u32::MAX)
    }

    /// How long a worker waits for its parent to connect: longer than any wait above it.
    pub fn wait_for_parent(&self, wait: Duration) -> Duration {
        wait + Duration::from_secs(10)
            + LEVEL_MARGIN * u32::try_from(self.height()).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_jobs_are_flat_as_before() {
        let t = Tree::new(4, DEFAULT_WIDTH);
        assert_eq!(t.children(0), 1..4);
        assert!(t.children(1).is_empty());
        assert_eq!(t.height(), 1);
        assert_eq!(t.subtree_size(0), 4);
        assert_eq!(t.subtree_size(3), 1);
        let wait = Duration::from_secs(60);
        assert_eq!(t.wait_below(0, wait), wait);
    }

    #[test]
    fn every_rank_has_one_parent_and_subtrees_add_up() {
        for (nodes, width) in [(1, 1), (2, 1), (10, 1), (10, 3), (100, 7), (10_000, 32)] {
            let t = Tree::new(nodes, width);
            let mut seen = vec![0usize; nodes];
            for r in 0..nodes {
                assert!(t.children(r).len() <= width);
                for c in t.children(r) {
                    seen[c] += 1;
                    assert_eq!(t.parent(c), Some(r), "{nodes}/{width}: {c}");
                    assert_eq!(t.depth(c), t.depth(r) + 1);
                }
                let below: usize = t.children(r).map(|c| t.subtree_size(c)).sum();
                assert_eq!(t.subtree_size(r), 1 + below, "{nodes}/{width}: {r}");
            }
            assert_eq!(seen[0], 0);
            assert!(seen[1..].iter().all(|&n| n == 1), "{nodes}/{width}");
            assert_eq!(t.subtree_size(0), nodes);
        }
    }

    #[test]
    fn ten_thousand_nodes_are_three_levels_below_rank_0() {
        let t = Tree::new(10_000, DEFAULT_WIDTH);
        assert_eq!(t.height(), 3);
        assert_eq!(t.children(0), 1..33);
        assert_eq!(t.children(32), 1025..1057);
        let wait = Duration::from_secs(60);
        // Rank 0 waits longest; the relays just above the leaves wait exactly --wait-timeout.
        assert_eq!(t.wait_below(0, wait), wait + 2 * LEVEL_MARGIN);
        assert_eq!(t.wait_below(32, wait), wait + LEVEL_MARGIN);
        assert_eq!(t.wait_below(1024, wait), wait);
        assert!(t.wait_for_parent(wait) > t.wait_below(0, wait));
    }

    #[test]
    fn a_chain_of_width_1() {
        let t = Tree::new(3, 1);
        assert_eq!(t.children(0), 1..2);
        assert_eq!(t.children(1), 2..3);
        assert_eq!(t.subtree_size(1), 2);
        assert_eq!(t.height(), 2);
    }
}
