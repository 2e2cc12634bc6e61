-- Pagination (issue 10, item 8): indexes that serve the keyset pages of functions/crm.sql
-- (customer_page, customer_viewer, crm_board) and functions/inbox.sql (conversation_messages,
-- customer_messages, inbox_conversations) in their exact order, so a page reads only its rows.
create index notes_page_idx on public.notes (customer_id, pinned desc, created_at desc, id desc);
create index timeline_page_idx on public.timeline_events (customer_id, occurred_at desc, id desc);
create index cards_page_idx on public.cards (stage_id, position, created_at, id);
create index activities_page_idx on public.activities (customer_id, created_at desc, id desc);
create index messages_page_idx on public.messages (tenant_id, conversation_id, created_at desc, id desc);
create index conversations_page_idx on public.conversations (tenant_id, (coalesce(last_message_at, '-infinity'::timestamptz)) desc, id desc);
