/*
 * Each channel's documented limits (issue 10, item 2), checked by public.send_message before anything
 * is queued (private.check_channel_limits, functions/inbox.sql): text length, SMS segments, media
 * captions, template parameters, attachment kinds, MIME types and sizes. One row per channel kind;
 * reference data (change a row to follow a provider), read by SQL only.
 *
 * Sources (checked 2026-12):
 *   WhatsApp Cloud API: text body up to 4096 characters, media caption 1024; image jpeg/png 5 MB, video
 *     mp4/3gpp 16 MB, audio aac/amr/mpeg/mp4/ogg 16 MB, document 100 MB, sticker webp 500 KB (animated;
 *     static 100 KB); template body 1024 characters, parameters without new-lines or tabs and without
 *     more than 4 consecutive spaces (error 132018).
 *   Messenger Send API: text up to 2000 characters; attachments up to 25 MB.
 *   Instagram Messaging: text UTF-8, 1000 bytes or less; image png/jpeg/gif 8 MB, video
 *     mp4/ogg/avi/mov/webm 25 MB, audio aac/m4a/wav/mp4 25 MB, file 25 MB.
 *   Telegram Bot API sendMessage: 1-4096 characters after entities parsing (counted in UTF-16 code
 *     units), captions 0-1024; files by URL: photos 5 MB, other files 20 MB.
 *   SMS: one segment is 160 GSM-7 characters (153 per part when concatenated; ^ { } \ [ ~ ] | € take
 *     two) or 70 UCS-2 code units (67 per part); Twilio accepts bodies up to 1600 characters and
 *     concatenates; we allow 10 segments (Twilio's recommended maximum), Netgsm likewise.
 *   E-mail: no text limit here (the SMTP server's message size applies).
 *   Web chat: our own widget's 4000 characters (edge/routes/inbox.py).
 */
create table private.channel_limits (
  kind text primary key check (kind in ('whatsapp', 'instagram', 'messenger', 'email', 'sms_twilio', 'sms_netgsm',
                                        'telegram', 'webchat')),
  max_text int check (max_text is null or max_text > 0),                 -- null: no limit
  text_unit text not null default 'characters' check (text_unit in ('characters', 'utf8_bytes', 'utf16_units', 'sms_segments')),
  max_caption int check (max_caption is null or max_caption >= 0),       -- text sent with media
  max_segments int check (max_segments is null or max_segments > 0),     -- SMS: concatenated parts
  template_max_param int check (template_max_param is null or template_max_param > 0),
  template_param_forbidden text,                                          -- a regular expression a parameter must not match
  template_param_rule text,                                               -- the rule in words (error messages)
  -- {"image": {"max_bytes": 5242880, "mime_types": ["image/jpeg", "image/png"]}, ...}; null: no media
  attachments jsonb check (attachments is null or jsonb_typeof(attachments) = 'object'),
  source text not null,
  updated_at timestamptz not null default now()
);
create trigger set_updated_at before update on private.channel_limits
  for each row execute function private.set_updated_at();
grant select on private.channel_limits to service_role;

insert into private.channel_limits (kind, max_text, text_unit, max_caption, max_segments, template_max_param,
                                    template_param_forbidden, template_param_rule, attachments, source) values
  ('whatsapp', 4096, 'characters', 1024, null, 1024, E'[\\n\\t]| {5,}',
   'no new-lines, tabs or more than 4 consecutive spaces',
   '{"image": {"max_bytes": 5242880, "mime_types": ["image/jpeg", "image/png"]},
     "video": {"max_bytes": 16777216, "mime_types": ["video/mp4", "video/3gpp"]},
     "audio": {"max_bytes": 16777216, "mime_types": ["audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"]},
     "document": {"max_bytes": 104857600, "mime_types": ["text/plain", "application/pdf", "application/vnd.ms-powerpoint",
       "application/msword", "application/vnd.ms-excel",
       "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
       "application/vnd.openxmlformats-officedocument.presentationml.presentation",
       "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"]},
     "sticker": {"max_bytes": 512000, "mime_types": ["image/webp"]}}',
   'developers.facebook.com/docs/whatsapp/cloud-api/reference/messages, .../reference/media#supported-media-types, template guidelines'),
  ('messenger', 2000, 'characters', null, null, null, null, null,
   '{"image": {"max_bytes": 26214400}, "video": {"max_bytes": 26214400}, "audio": {"max_bytes": 26214400},
     "file": {"max_bytes": 26214400}}',
   'developers.facebook.com/docs/messenger-platform/reference/send-api'),
  ('instagram', 1000, 'utf8_bytes', null, null, null, null, null,
   '{"image": {"max_bytes": 8388608, "mime_types": ["image/png", "image/jpeg", "image/gif"]},
     "video": {"max_bytes": 26214400, "mime_types": ["video/mp4", "video/ogg", "video/avi", "video/x-msvideo", "video/quicktime", "video/webm"]},
     "audio": {"max_bytes": 26214400, "mime_types": ["audio/aac", "audio/mp4", "audio/x-m4a", "audio/wav", "audio/x-wav"]},
     "file": {"max_bytes": 26214400}}',
   'developers.facebook.com/docs/messenger-platform/instagram/features/send-message'),
  ('telegram', 4096, 'utf16_units', 1024, null, null, null, null,
   '{"photo": {"max_bytes": 5242880}, "image": {"max_bytes": 5242880}, "document": {"max_bytes": 20971520},
     "video": {"max_bytes": 20971520}, "audio": {"max_bytes": 20971520}}',
   'core.telegram.org/bots/api#sendmessage, #sending-files'),
  ('sms_twilio', 1600, 'sms_segments', null, 10, null, null, null, null,
   'twilio.com/docs/glossary/what-sms-character-limit, twilio.com/docs/messaging/api/message-resource (Body up to 1600 characters)'),
  ('sms_netgsm', 1600, 'sms_segments', null, 10, null, null, null, null,
   'GSM 03.38 / 3GPP TS 23.040 segments; netgsm.com.tr API (concatenated SMS)'),
  ('email', null, 'characters', null, null, null, null, null, null, 'RFC 5322 (no body length limit; server message size applies)'),
  ('webchat', 4000, 'characters', null, null, null, null, null, null, 'edge/routes/inbox.py WebChatMessage (our widget)');
