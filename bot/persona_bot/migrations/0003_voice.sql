-- Replies to voice messages (voice, audio, video_note): the stored message is the transcript.
ALTER TABLE replies ADD COLUMN voice boolean NOT NULL DEFAULT false;
