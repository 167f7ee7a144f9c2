//! Connection slots of one kind: boxed (never moved while the kernel holds pointers into
//! them), reused through a free list, each with a generation so a completion for a slot's
//! previous occupant is caught.

/// Connection slots per kind per shard.
pub(super) const SLOTS_MAX: usize = 1 << 20;

pub(super) struct Slab<T> {
    items: Vec<Option<Box<T>>>,
    gens: Vec<u16>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { items: Vec::new(), gens: Vec::new(), free: Vec::new(), live: 0 }
    }
}

impl<T> Slab<T> {
    /// A slot for `item`, with its generation; None when every slot is taken.
    pub fn insert(&mut self, item: T) -> Option<(u32, u16)> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.items.len() < SLOTS_MAX => {
                self.items.push(None);
                self.gens.push(0);
                (self.items.len() - 1) as u32
            }
            None => return None,
        };
        self.items[slot as usize] = Some(Box::new(item));
        self.live += 1;
        Some((slot, self.gens[slot as usize]))
    }

    pub fn remove(&mut self, slot: u32) -> Box<T> {
        let item = self.items[slot as usize].take().expect("removing a live slot");
        self.gens[slot as usize] = self.gens[slot as usize].wrapping_add(1);
        self.free.push(slot);
        self.live -= 1;
        item
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut T {
        self.items[slot as usize].as_deref_mut().expect("a live slot")
    }

    /// The slot's item if it still holds the generation `gen`.
    pub fn get_gen(&mut self, slot: u32, gen: u16) -> Option<&mut T> {
        let current = *self.gens.get(slot as usize)?;
        self.items[slot as usize].as_deref_mut().filter(|_| current == gen)
    }

    pub fn gen(&self, slot: u32) -> u16 {
        self.gens[slot as usize]
    }

    /// A completion for the slot's socket operation: it must be the live occupant's, and its
    /// operation is no longer in flight.
    pub fn sock_done(&mut self, slot: u32, gen: u16, sock: impl FnOnce(&mut T) -> &mut super::Sock) {
        let item = self.get_gen(slot, gen).unwrap_or_else(|| panic!("completion for a freed connection slot {slot}"));
        sock(item).op = None;
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The live slots (for deadlines and shutdown).
    pub fn slots(&self) -> Vec<u32> {
        (0..self.items.len() as u32).filter(|s| self.items[*s as usize].is_some()).collect()
    }
}
