/*
 * Edits, deletions and group chats (issue 10, item 9).
 *
 * messages.edits      every earlier version of the message, oldest first: [{"body", "attachments",
 *                     "until" (when it was replaced), "deleted" (true for the version an unsend removed)}]
 * messages.edited_at  the provider's time of the last edit (Telegram edit_date, Messenger message_edit,
 *                     WhatsApp type=edit)
 * messages.deleted_at the customer deleted / unsent it (Instagram is_deleted, WhatsApp type=revoke)
 * messages.sender_contact_id  who wrote an inbound message: in a group chat every participant is a
 *                     contact of their own (Telegram from.id), the conversation is the group's
 * conversations.group_chat_id the group's chat id (Telegram group / supergroup): replies go there
 */
alter table public.messages
  add column edits jsonb not null default '[]'::jsonb check (jsonb_typeof(edits) = 'array'),
  add column edited_at timestamptz,
  add column deleted_at timestamptz,
  add column sender_contact_id uuid;
alter table public.messages
  add constraint messages_sender_contact_fk foreign key (tenant_id, sender_contact_id)
    references public.contacts (tenant_id, id) on delete set null (sender_contact_id);
create index messages_sender_contact_idx on public.messages (tenant_id, sender_contact_id) where sender_contact_id is not null;

alter table public.conversations add column group_chat_id text;
comment on column public.conversations.group_chat_id is
  'A group chat''s own id (Telegram group / supergroup): one conversation per group, replies are sent to it';
