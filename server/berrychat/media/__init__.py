"""Attachments: storage, content sniffing, images (Pillow), audio durations, video posters."""
