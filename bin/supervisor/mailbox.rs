//! A queue between threads of one process that sleeps at once when empty: a mutex, a
//! condition variable and a `VecDeque`. Used where a thread waits for one message at a
//! time at full dispatch rate (a worker's loop and its job waiter, the supervisor's
//! writer to each child): a crossbeam receiver spins, then yields the CPU several times
//! before it sleeps, and those yields were 30% of a worker's CPU and a third of the
//! supervisor's at 1,600 jobs/s on two cores. The supervisor's own event queue stays a
//! crossbeam channel (it selects with a deadline over many senders and is the one place
//! everything meets).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// Live [`Post`]s: none left and the queue empty, the receiver is told.
    posts: usize,
    /// The [`Mailbox`] is gone: sends fail.
    closed: bool,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending end (cloneable).
#[derive(Debug)]
pub struct Post<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving end.
#[derive(Debug)]
pub struct Mailbox<T> {
    shared: Arc<Shared<T>>,
}

/// Why [`Mailbox::recv_timeout`] returned without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// Nothing came in time.
    Timeout,
    /// Nothing will come: every [`Post`] is gone.
    Disconnected,
}

/// A new mailbox and its first post.
pub fn mailbox<T>() -> (Post<T>, Mailbox<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            posts: 1,
            closed: false,
        }),
        ready: Condvar::new(),
    });
    (
        Post {
            shared: Arc::clone(&shared),
        },
        Mailbox { shared },
    )
}

impl<T> Post<T> {
    /// Leave `msg` in the mailbox; given back when the mailbox is gone.
    pub fn send(&self, msg: T) -> Result<(), T> {
        let mut st = self.shared.state();
        if st.closed {
            return Err(msg);
        }
        st.queue.push_back(msg);
        drop(st);
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl<T> Clone for Post<T> {
    fn clone(&self) -> Self {
        self.shared.state().posts += 1;
        Post {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Post<T> {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        st.posts -= 1;
        let last = st.posts == 0;
        drop(st);
        if last {
            self.shared.ready.notify_all();
        }
    }
}

impl<T> Mailbox<T> {
    /// The next message; `None` once every post is gone and nothing is left.
    pub fn recv(&self) -> Option<T> {
        let mut st = self.shared.state();
        loop {
            if let Some(msg) = st.queue.pop_front() {
                return Some(msg);
            }
            if st.posts == 0 {
                return None;
            }
            st = (self.shared.ready.wait(st)).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next message, waiting at most `wait`.
    pub fn recv_timeout(&self, wait: Duration) -> Result<T, Empty> {
        let deadline = Instant::now().checked_add(wait);
        let mut st = self.shared.state();
        loop {
            if let Some(msg) = st.queue.pop_front() {
                return Ok(msg);
            }
            if st.posts == 0 {
                return Err(Empty::Disconnected);
            }
            let left = match deadline {
                // Too far away to say: wait as for ever.
                None => Duration::MAX,
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            if left.is_zero() {
                return Err(Empty::Timeout);
            }
            st = (self.shared.ready.wait_timeout(st, left))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl<T> Drop for Mailbox<T> {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        st.closed = true;
        // What was left is dropped with the mailbox, not with the last post.
        st.queue.clear();
    }
}

impl<T> Iterator for &Mailbox<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_in_order_until_every_post_is_gone() {
        let (post, mailbox) = mailbox();
        let other = post.clone();
        let t = std::thread::spawn(move || {
            for i in 0..1000 {
                other.send(i).unwrap();
            }
        });
        for i in 1000..2000 {
            post.send(i).unwrap();
        }
        drop(post);
        t.join().unwrap();
        let got: Vec<i32> = (&mailbox).collect();
        assert_eq!(got.len(), 2000);
        let mut theirs: Vec<i32> = got.iter().copied().filter(|i| *i < 1000).collect();
        let ours: Vec<i32> = got.iter().copied().filter(|i| *i >= 1000).collect();
        assert!(
            theirs.windows(2).all(|w| w[0] < w[1]),
            "each sender's order kept"
        );
        assert!(ours.windows(2).all(|w| w[0] < w[1]));
        theirs.sort_unstable();
        assert_eq!(theirs, (0..1000).collect::<Vec<_>>());
        assert_eq!(mailbox.recv(), None);
    }

    #[test]
    fn a_timeout_says_whether_anything_can_still_come() {
        let (post, mailbox) = mailbox::<u8>();
        assert_eq!(
            mailbox.recv_timeout(Duration::from_millis(1)),
            Err(Empty::Timeout)
        );
        post.send(7).unwrap();
        assert_eq!(mailbox.recv_timeout(Duration::ZERO), Ok(7));
        drop(post);
        assert_eq!(
            mailbox.recv_timeout(Duration::MAX),
            Err(Empty::Disconnected)
        );
    }

    #[test]
    fn a_message_wakes_a_waiting_receiver() {
        let (post, mailbox) = mailbox::<u8>();
        let t = std::thread::spawn(move || mailbox.recv_timeout(Duration::from_secs(60)));
        post.send(1).unwrap();
        assert_eq!(t.join().unwrap(), Ok(1));
    }

    #[test]
    fn sending_to_a_dropped_mailbox_gives_the_message_back() {
        let (post, mailbox) = mailbox::<String>();
        drop(mailbox);
        assert_eq!(post.send("x".into()), Err("x".to_string()));
    }
}
