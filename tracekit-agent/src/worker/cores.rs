//! Exclusive core allocation: a task of k units gets k cores that no other
//! running task holds, until it ends.

/// Which of the machine's cores are held.
#[derive(Debug, Clone)]
pub struct CoreAllocator {
    held: Vec<bool>,
}

impl CoreAllocator {
    /// An allocator over cores `0..cores`.
    pub fn new(cores: usize) -> Self {
        CoreAllocator {
            held: vec![false; cores],
        }
    }

    pub fn free(&self) -> usize {
        self.held.iter().filter(|h| !**h).count()
    }

    /// Take `k` free cores, preferring a contiguous run (neighbouring cores
    /// often share a cache), else the lowest free ones; `None` if fewer than
    /// `k` are free.
    pub fn allocate(&mut self, k: usize) -> Option<Vec<u32>> {
        if k == 0 || self.free() < k {
            return None;
        }
        let run = (0..=self.held.len() - k).find(|&s| self.held[s..s + k].iter().all(|h| !h));
        let cores: Vec<usize> = match run {
            Some(s) => (s..s + k).collect(),
            None => (0..self.held.len())
                .filter(|&c| !self.held[c])
                .take(k)
                .collect(),
        };
        for &c in &cores {
            self.held[c] = true;
        }
        Some(cores.into_iter().map(|c| c as u32).collect())
    }

    /// Give cores back.
    pub fn release(&mut self, cores: &[u32]) {
        for &c in cores {
            if let Some(h) = self.held.get_mut(c as usize) {
                *h = false;
            }
        }
    }
}

/// `[0, 1, 2, 5]` → `"0-2,5"` (the cpuset list format).
pub fn cpu_list(cores: &[u32]) -> String {
    let mut sorted = cores.to_vec();
    sorted.sort_unstable();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_double_books_a_core() {
        let mut a = CoreAllocator::new(8);
        let x = a.allocate(3).expect("3 of 8");
        let y = a.allocate(4).expect("4 of 5");
        assert!(x.iter().all(|c| !y.contains(c)));
        assert_eq!(a.allocate(2), None, "only one core left");
        a.release(&x);
        let z = a.allocate(3).expect("3 free again");
        assert!(z.iter().all(|c| !y.contains(c)));
        assert_eq!(a.free(), 1);
    }

    #[test]
    fn fragmented_cores_still_allocate() {
        let mut a = CoreAllocator::new(4);
        let one = a.allocate(1).expect("core 0");
        let _two = a.allocate(1).expect("core 1");
        a.release(&one);
        let _three = a.allocate(1).expect("core 0 again");
        // cores 2 and 3 free: contiguous
        assert_eq!(a.allocate(2), Some(vec![2, 3]));
        let mut b = CoreAllocator::new(4);
        let c0 = b.allocate(1).expect("0");
        let _c1 = b.allocate(1).expect("1");
        let _c2 = b.allocate(1).expect("2");
        b.release(&c0);
        // No two neighbours are free: the lowest free ones are taken.
        assert_eq!(b.allocate(2), Some(vec![0, 3]));
        assert_eq!(b.allocate(1), None);
    }

    #[test]
    fn formats_cpu_lists() {
        assert_eq!(cpu_list(&[0, 1, 2, 5]), "0-2,5");
        assert_eq!(cpu_list(&[3]), "3");
        assert_eq!(cpu_list(&[7, 6, 0]), "0,6-7");
    }
}
