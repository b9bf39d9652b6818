//! Notification tests.
